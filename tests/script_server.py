"""Runs the script as a new process without starting a new Python: a fork server for run_cli.

Of the 85 ms a short run of the script takes, about 60 go to starting Python, its
site-packages and the script's standard modules, and to tearing them down at the end; the
suite runs the script some 600 times. So each test process starts one server (this
file, under the same Python), which imports the modules once and then, for each request,
forks a child that becomes the run `python mims_package.pyc ARGS` would be: a fresh
`__main__` module executing the script's compiled code, sys.argv and sys.path[0] as that
command sets them, the request's environment, working directory and standard streams
(standard input from /dev/null), and tarfile.data_filter deleted if asked (as on Python
3.7). The child ends as Python ends a run (threads joined, atexit run, streams flushed,
the exit status Python would give) but skips tearing the modules down; the server reports
the status as subprocess reports a child's.

What differs from a new Python: settings read once at start-up (the hash seed, PYTHON*
variables, the locale) are the server's. run_cli uses a real subprocess when a request
sets any of those, and the interpreter matrix (test_interpreters.py) always does.

Protocol, one request at a time: a JSON line on the server's standard input; it answers
"<pid>\\n" once the child runs, then "<exit status>\\n" when it has ended.
"""

from __future__ import annotations

import atexit
import builtins
import json
import locale
import marshal
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any, NoReturn, Optional

# What a request may not change in a forked child: read by Python as it starts.
STARTUP_VARIABLES = ("PYTHON", "LC_", "LANG")


def _read_line(fd: int) -> bytes:
    """One line from fd, read a byte at a time so that nothing after it is consumed."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return line
        line += byte
    return line


def _open_streams(request: dict[str, Any]) -> None:
    """Standard input from /dev/null; standard output and error to the request's files (one
    file for both if it names the same)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    streams = [os.open(os.devnull, os.O_RDONLY), os.open(request["stdout"], flags, 0o600)]
    if request["stderr"] == request["stdout"]:
        streams.append(streams[1])
    else:
        streams.append(os.open(request["stderr"], flags, 0o600))
    for target, fd in enumerate(streams):
        os.dup2(fd, target)
    for fd in set(streams):
        os.close(fd)


def _become_the_run(request: dict[str, Any], code: types.CodeType, pyc: str) -> None:
    """In the forked child: the process state `python pyc ARGS` starts with."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _open_streams(request)
    if request["without_data_filter"]:
        import tarfile

        if hasattr(tarfile, "data_filter"):
            del tarfile.data_filter
    sys.argv = [pyc, *request["args"]]
    sys.path[0] = os.path.dirname(pyc)
    main = types.ModuleType("__main__")
    main.__file__ = pyc
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    exec(code, vars(main))


def _run_and_exit(request: dict[str, Any], code: types.CodeType, pyc: str) -> NoReturn:
    """In the forked child: run, then end as Python ends a run (its exit status from
    SystemExit, a traceback and 1 for any other exception; threads joined, atexit run,
    streams flushed) but without tearing down the modules, which takes 25 ms."""
    try:
        _become_the_run(request, code, pyc)
        status = 0
    except SystemExit as exit:
        status = _exit_status(exit.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def _exit_status(code: object) -> int:
    """The status Python exits with for sys.exit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve(pyc: str, replies: int) -> None:
    """Answer requests on standard input, until it closes, on the replies fd; each run is a
    forked child."""
    runpy.run_path(pyc, run_name="mims_package_preloaded")  # its imports, once
    code = _code_of(pyc)
    while True:
        line = _read_line(0)
        if not line:
            return
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(replies)
            _run_and_exit(request, code, pyc)
        os.write(replies, b"%d\n" % pid)
        _, status = os.waitpid(pid, 0)
        os.write(replies, b"%d\n" % os.waitstatus_to_exitcode(status))


def _code_of(pyc: str) -> types.CodeType:
    """The code object of a .pyc (after its 16-byte header)."""
    return marshal.loads(Path(pyc).read_bytes()[16:])  # type: ignore[no-any-return]


class ScriptServer:
    """The client: run_cli's requests to one server under sys.executable."""

    def __init__(self, pyc: str) -> None:
        self.pyc = pyc
        read, self.replies_w = os.pipe()
        self.replies = os.fdopen(read, "rb", buffering=0)
        self.process = subprocess.Popen(
            [sys.executable, __file__, pyc, str(self.replies_w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(self.replies_w,),
        )
        os.close(self.replies_w)
        self.lock = threading.Lock()
        self.startup = _startup_settings(os.environ)

    def can_run(self, env: dict[str, str]) -> bool:
        """Whether a forked child is the run env asks for: the same start-up settings."""
        return _startup_settings(env) == self.startup

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()
        self.replies.close()

    def _reply(self, timeout: Optional[float]) -> Optional[int]:
        if not select.select([self.replies], [], [], timeout)[0]:
            return None
        line = _read_line(self.replies.fileno())
        if not line:
            raise RuntimeError("the script server ended")
        return int(line)

    def run(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        merged: bool,
        timeout: float,
        scratch: Path,
        without_data_filter: bool,
    ) -> subprocess.CompletedProcess[str]:
        """The run `python pyc ARGS` with env would be; its output through files in scratch."""
        stdout, stderr = scratch / "stdout", scratch / "stderr"
        request = {
            "args": args,
            "env": env,
            "cwd": os.getcwd(),
            "stdout": str(stdout),
            "stderr": str(stdout if merged else stderr),
            "without_data_filter": without_data_filter,
        }
        command = [sys.executable, self.pyc, *args]
        with self.lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            pid = self._reply(60)
            if pid is None:
                raise RuntimeError("the script server did not start the run")
            code = self._reply(timeout)
            if code is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(None)
                raise subprocess.TimeoutExpired(command, timeout, output=_text(stdout))
        return subprocess.CompletedProcess(
            command, code, _text(stdout), "" if merged else _text(stderr)
        )


def _startup_settings(env: Any) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_VARIABLES)}


def _text(path: Path) -> str:
    """A child's output as subprocess.run(text=True) gives it: the locale's encoding,
    universal newlines."""
    data = path.read_bytes() if path.exists() else b""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
