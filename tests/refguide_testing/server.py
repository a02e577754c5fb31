"""A live ComfyUI server for end-to-end tests: started once per session on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent
PACK_LINK_NAME = "comfyui-refguide"


class ComfyServer:
    """Handle on a running ComfyUI process: HTTP helpers plus the base directory it serves."""

    def __init__(self, comfy_root: Path, base_dir: Path, extra_args: tuple[str, ...] = ()):
        self.comfy_root = Path(comfy_root)
        self.base_dir = Path(base_dir)
        self.extra_args = list(extra_args)  # more ComfyUI arguments, e.g. ("--front-end-root", path)
        self.log_path = self.base_dir / "server.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ComfyServer:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        _symlink(REPO, self.base_dir / "custom_nodes" / PACK_LINK_NAME)
        _symlink(TESTS_DIR / "refguide_testing" / "test_nodes", self.base_dir / "custom_nodes" / "refguide_test_nodes")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--database-url", "sqlite:///:memory:", *self.extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=self.comfy_root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.get_json("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- HTTP ------------------------------------------------------------------------------------
    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post_json(self, path: str, payload: dict):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def submit(self, api_prompt: dict) -> tuple[int, dict]:
        """POST /prompt; returns (status, body) without raising, for tests of validation errors."""
        return self.post_json("/prompt", {"prompt": api_prompt, "client_id": uuid.uuid4().hex})

    def run_prompt(self, api_prompt: dict, timeout: float = 600.0) -> dict:
        """Queue a prompt and wait for its history entry; raise with ComfyUI's own error text on failure."""
        status, body = self.submit(api_prompt)
        if status != 200:
            raise PromptError(f"/prompt answered {status}: {json.dumps(body, indent=1)[:6000]}", body)
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    messages = entry["status"].get("messages", [])
                    raise PromptError(f"prompt failed: {json.dumps(messages, indent=1)[:6000]}", entry)
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_text()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s")

    def output_files(self, entry: dict, kind: str = "images") -> list[Path]:
        """Absolute paths of the files a finished prompt saved (SaveImage, SaveAnimatedWEBP, ...)."""
        paths = []
        for node_output in entry.get("outputs", {}).values():
            for item in node_output.get(kind, []):
                root = self.base_dir / ("output" if item.get("type") == "output" else "temp")
                paths.append(root / item.get("subfolder", "") / item["filename"])
        return paths


class PromptError(RuntimeError):
    """A prompt that ComfyUI refused or that failed while executing; ``body`` holds ComfyUI's answer."""

    def __init__(self, message: str, body):
        super().__init__(message)
        self.body = body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
