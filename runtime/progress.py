"""Progress bars: tqdm on stderr, shown only when asked for and stderr is a terminal (piped logs stay readable)."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar (options as tqdm's), disabled unless `enabled` and stderr is a terminal."""
    return tqdm(disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **options)
