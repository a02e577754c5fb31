"""Attention math of the pack: plain torch, no ComfyUI import. Each function names its equation."""
