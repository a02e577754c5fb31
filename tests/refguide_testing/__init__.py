"""Test support: tiny stand-in models in real ComfyUI formats, a live-server client, workflow conversion."""
