"""How every stage and command fails: one line naming the problem and the fix, no traceback, exit 1."""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable

# A full disk, a quota, a file size limit, a read-only or unwritable place, a file where
# an output folder should be: the user can fix all of these, so no traceback.
_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                 errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


class UserError(Exception):
    """A problem the user can fix (bad params, bad archive, no space left).

    Stages print its message alone, without a traceback, and exit with status 1.
    """


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(): a UserError becomes a short message and exit status 1."""
    try:
        main()
    except UserError as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nInterrupted: outputs of this stage were not written.", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if error.errno not in _CANNOT_WRITE:
            raise
        print(f"\nERROR: cannot write {error.filename or 'an output'}: {error.strerror}. "
              "Free some disk space or fix the output folder (it must be a writable folder), "
              "then run again.", file=sys.stderr)
        sys.exit(1)
