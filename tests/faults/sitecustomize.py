"""Fault injection for the crash-safety tests, loaded by a bundle run in a subprocess (``PYTHONPATH=tests/faults``).

``MEDTRANSFER_TEST_FAULT=ACTION:OPERATION:NAME:N`` picks one instant: the N-th time a file named NAME is replaced
(``os.replace`` onto it), deleted (``os.unlink``/``os.remove``) or written (its temporary file opened for writing).
ACTION ``kill`` ends the process there with SIGKILL, as a power cut or the OOM killer would; ``enospc`` makes that
write fail as a full disk does. Without the variable nothing is patched. No project code knows about this file.
"""

import os

_SPEC = os.environ.get("MEDTRANSFER_TEST_FAULT")

if _SPEC:
    import builtins
    import errno
    import signal

    _action, _operation, _name, _nth = _SPEC.split(":")
    _seen = {"count": 0}

    def _due() -> bool:
        """Count one more occurrence of the chosen operation on NAME; True at the N-th."""
        _seen["count"] += 1
        return _seen["count"] == int(_nth)

    def _strike() -> None:
        if _action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _named(path) -> bool:
        return os.path.basename(os.fspath(path)) == _name

    if _operation == "replace":
        _replace = os.replace

        def _patched_replace(src, dst, *args, **kwargs):
            if _named(dst) and _due():
                _strike()
            return _replace(src, dst, *args, **kwargs)

        os.replace = _patched_replace
    elif _operation == "unlink":
        _unlink, _remove = os.unlink, os.remove

        def _patched_unlink(path, *args, **kwargs):
            if _named(path) and _due():
                _strike()
            return _unlink(path, *args, **kwargs)

        os.unlink = os.remove = _patched_unlink
    elif _operation == "write":
        _open = builtins.open

        class _FillingFile:
            """The chosen file: its first write lands a few bytes, then fails (or the process dies)."""

            def __init__(self, file) -> None:
                self._file = file

            def write(self, data):
                self._file.write(bytes(data)[:16])
                _strike()

            def __getattr__(self, name):
                return getattr(self._file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._file.close()

        def _patched_open(file, mode="r", *args, **kwargs):
            handle = _open(file, mode, *args, **kwargs)
            base = os.path.basename(os.fspath(file)) if isinstance(file, (str, bytes, os.PathLike)) else ""
            if "w" in mode and base.startswith(f".{_name}.") and base.endswith(".tmp") and _due():
                return _FillingFile(handle)
            return handle

        builtins.open = _patched_open
