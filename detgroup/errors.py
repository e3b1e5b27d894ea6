"""The one exception type for errors a user can cause (bad files, bad config, bad boxes)."""

from __future__ import annotations


class DetgroupError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2.

    The message names the file, the id and what is wrong. Bugs are never raised as this type.
    """
