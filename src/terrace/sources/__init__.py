"""Where a workspace's files come from: a git repository at a ref, or a server-local folder."""

from terrace.sources.git import GitCheckout, check_git_url, checkout
from terrace.sources.local import check_local_folder

__all__ = ["GitCheckout", "check_git_url", "check_local_folder", "checkout"]
