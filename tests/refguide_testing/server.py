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

    def __init__(
        self, comfy_root: Path, base_dir: Path, extra_args: tuple[str, ...] = (), extra_env: dict | None = None
    ):
        self.comfy_root = Path(comfy_root)
        self.base_dir = Path(base_dir)
        self.extra_args = tuple(extra_args)  # more ComfyUI arguments (--lowvram, --cache-classic, ...)
        self.extra_env = dict(extra_env or {})  # more environment variables of the server process
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
        env.update(self.extra_env)
        cmd = [
            sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip
        if os.environ.get("REFGUIDE_DEVICE", "cpu") == "cpu":
            cmd.append("--cpu")  # REFGUIDE_DEVICE=cuda: the server uses the GPU, as ComfyUI does by default
        cmd += list(self.extra_args)
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

    # ---- process state, read from outside (Linux /proc) ---------------------------------------------
    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def open_files(self) -> list[str]:
        """The paths of the files the server process holds open."""
        paths = []
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            try:
                paths.append(os.readlink(fd))
            except OSError:  # closed meanwhile
                continue
        return paths

    def mapped_files(self) -> set[str]:
        """The files the server process has memory-mapped (a mapping keeps a file in use like an open handle)."""
        maps = Path(f"/proc/{self.process.pid}/maps").read_text().splitlines()
        return {line.split(None, 5)[5] for line in maps if len(line.split(None, 5)) == 6}

    # ---- queue control ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """What the front end's "Unload models" / "Free model and node cache" buttons send."""
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until the queue is empty and nothing runs (flags such as /free are handled by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.get_json("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            time.sleep(0.2)
        raise TimeoutError("the queue did not empty")

    def run_and_interrupt(self, api_prompt: dict, node_id: str, after_progress: int = 1, timeout: float = 300.0):
        """Queue a prompt, POST /interrupt once node ``node_id`` has reported ``after_progress`` progress steps
        (its progress bar: sampling steps, encoded images), and return the prompt's history entry.

        Listens on the server's websocket as the front end does (aiohttp comes with ComfyUI).
        """
        import asyncio

        import aiohttp

        client_id = uuid.uuid4().hex

        async def listen(ws, prompt_id):
            interrupted_at = None
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if (
                    interrupted_at is None
                    and event["type"] == "progress"
                    and str(data.get("node")) == node_id
                    and data["value"] >= after_progress
                ):
                    interrupted_at = (data["value"], data["max"])
                    self.interrupt()
                if event["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                    return interrupted_at
            raise RuntimeError("the websocket closed before the prompt ended")

        async def drive():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                    status, body = self.post_json("/prompt", {"prompt": api_prompt, "client_id": client_id})
                    if status != 200:
                        raise PromptError(f"/prompt answered {status}: {json.dumps(body)[:3000]}", body)
                    prompt_id = body["prompt_id"]
                    return prompt_id, await asyncio.wait_for(listen(ws, prompt_id), timeout)

        prompt_id, interrupted_at = asyncio.run(drive())
        for _ in range(100):
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry, interrupted_at
            time.sleep(0.1)
        raise TimeoutError(f"no history for prompt {prompt_id}")


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
