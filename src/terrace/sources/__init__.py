"""Where a workspace's files come from: a git repository at a ref, or a server-local folder."""

from terrace.sources.git import Busy, GitCheckout, check_git_url, checkout
from terrace.sources.local import MAX_SPEC_BYTES, check_local_folder, read_workspace_file

__all__ = [
    "MAX_SPEC_BYTES",
    "Busy",
    "GitCheckout",
    "check_git_url",
    "check_local_folder",
    "checkout",
    "read_workspace_file",
]
