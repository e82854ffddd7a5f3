"""The one exception type users see.

Every problem a user can fix (a wrong flag, a missing file, a corrupt shard) is raised as
`AimriError` with a message that names the thing, the reason and the fix. The CLI prints it as
one line without a traceback. Internal invariants use `assert`, not this type.
"""

from __future__ import annotations


class AimriError(Exception):
    """A problem the user can fix; the message says what, why and how."""
