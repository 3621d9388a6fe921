"""Runs every docstring example (``>>>``) in ``keras_scalevit`` with doctest.

One test per module, so a failure names the module. The suite runs once per
Keras backend, so the examples are backend-neutral: numpy inputs, outputs read
through ``keras.ops.convert_to_numpy``, no backend-specific reprs.
"""

import doctest
import importlib
import importlib.util
import inspect
import pkgutil

import pytest

import keras_scalevit

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    """Modules whose source holds a ``>>>`` example (package ``__init__``s hold none)."""
    names = [keras_scalevit.__name__]
    for info in pkgutil.walk_packages(
        keras_scalevit.__path__, prefix=keras_scalevit.__name__ + "."
    ):
        names.append(info.name)
    with_examples = []
    for name in sorted(names):
        origin = importlib.util.find_spec(name).origin
        with open(origin, encoding="utf-8") as f:
            if ">>>" in f.read():
                with_examples.append(name)
    return with_examples


def _defined_in(obj, module):
    return getattr(obj, "__module__", None) == module.__name__


def _collect_tests(module):
    """DocTests of the module, its classes, functions and methods defined in it."""
    finder = doctest.DocTestFinder(recurse=False, exclude_empty=True)
    objects = [(module.__name__, module)]
    for name, obj in sorted(vars(module).items()):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not _defined_in(obj, module):
            continue
        qualname = f"{module.__name__}.{name}"
        objects.append((qualname, obj))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if not inspect.isfunction(member) or not _defined_in(member, module):
                    continue
                objects.append((f"{qualname}.{attr}", member))
    tests = []
    seen = set()
    for qualname, obj in objects:
        for test in finder.find(obj, name=qualname, module=module, globs={}):
            if test.examples and id(obj) not in seen:
                seen.add(id(obj))
                tests.append(test)
    return tests


@pytest.mark.parametrize("module_name", _module_names())
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    tests = _collect_tests(module)
    assert tests, f"{module_name} has '>>>' in its source but no collectable example"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures = []
    for test in tests:
        out = []
        result = runner.run(test, out=out.append, clear_globs=True)
        if result.failed:
            failures.append("".join(out))
    assert not failures, f"{module_name}: doctest failures\n" + "\n".join(failures)
