"""The differences between the bare and the watched run that the gate accepts, each with why.

Keys are test ids as pytest prints them; ``*`` matches any text (backend-specific classes carry
the driver and server version in their name). Every reason names the issue that removes it:
when that issue is fixed the difference disappears, and the gate says the entry can go.
"""

from __future__ import annotations

# test id -> reason its outcome differs when every engine is watched
DIFFERENCES: dict[str, str] = {}

# test id -> {hook: reason} for observer_hook_errors_total seen while the test ran
HOOK_ERRORS: dict[str, dict[str, str]] = {}
