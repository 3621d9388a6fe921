"""The refined ViT of *Scaling Vision Transformers* (big_vision's `models/vit.py`)."""
