"""The metrics log: ``metrics.jsonl``, one JSON object per line."""

import json
import os

METRICS_NAME = "metrics.jsonl"


def floats(logs):
    """The entries of Keras ``logs`` that are numbers, as Python floats."""
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class JsonLines:
    """Appends one JSON object per line to ``path``; truncates on resume.

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.training import JsonLines
    >>> log = JsonLines(os.path.join(tempfile.mkdtemp(), "metrics.jsonl"))
    >>> for step in (1, 2, 3):
    ...     log.write({"step": step, "loss": 1.0 / step})
    >>> log.truncate_after(2)
    >>> open(log.path).read().count("\\n")
    2
    """

    def __init__(self, path):
        self.path = path

    def remove_stale(self):
        """Deletes the temp file of an interrupted `truncate_after`; returns it."""
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
            return [tmp]
        return []

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step):
        """Drops records past ``step`` (a resumed run rewrites them)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step and not record.get("final"):
                keep.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)


def finished_record(metrics_path, total_steps):
    """The ``"final": true`` record of ``metrics.jsonl`` at ``total_steps``, or None."""
    try:
        with open(metrics_path) as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("final"):
            return record if record.get("step") == total_steps else None
    return None
