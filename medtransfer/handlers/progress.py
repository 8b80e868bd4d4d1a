"""Training progress (transitional: ignite's bar; to become a bar on a terminal and one line per epoch otherwise)."""

from ignite.handlers import ProgressBar as RunProgress  # noqa: F401
