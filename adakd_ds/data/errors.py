"""The one error type of the data pipeline.

Every bad input (a malformed line, a missing field, an empty dataset) is raised as a DataError with a single line that
names the file and the line or record at fault, so it surfaces before training starts and is easy to fix.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file and line/record at fault."""
