"""A real ComfyUI server process for the tests: started on a free loopback port, driven over its HTTP API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ComfyUIServer:
    def __init__(self, comfyui_path: str, base: os.PathLike, pack_root: str, timeout: float = 180.0):
        self.comfyui_path = os.path.abspath(comfyui_path)
        self.base = str(base)
        self.pack_root = pack_root
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.base, "server.log")
        self._object_info: dict | None = None

    # 1. Start: a base directory of its own, the pack linked into a custom_nodes folder named in the yaml.
    def start(self) -> None:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user", "packs"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        link = os.path.join(self.base, "packs", "unidense")
        if not os.path.lexists(link):
            os.symlink(self.pack_root, link)
        yaml_path = os.path.join(self.base, "extra_model_paths.yaml")
        with open(yaml_path, "w", encoding="utf-8") as f:
            f.write(f"unidense_tests:\n  custom_nodes: {os.path.join(self.base, 'packs')}\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--extra-model-paths-config", yaml_path, "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:"]  # fmt: skip
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} at start:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    # 2. HTTP.
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url(path), data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get("/object_info", timeout=60)
        return self._object_info

    # 3. Run an API-format prompt to the end; the /history entry.
    def run(self, prompt: dict, timeout: float = 120) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return self.wait(body["prompt_id"], timeout)

    def wait(self, pid: str, timeout: float = 120) -> dict:
        """The /history entry of a queued prompt once it succeeded or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get("/history/" + urllib.parse.quote(pid))
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") in ("success", "error"):
                    return hist[pid]
            time.sleep(0.2)
        raise AssertionError(f"prompt {pid} did not finish within {timeout:.0f} s:\n{self.log()[-3000:]}")
