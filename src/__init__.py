"""l0-sparse: inference-free learned sparse retrievers with the l0 mask and l0 activation."""

from src.common.runtime import keep_freed_memory, quiet_dependencies, set_thread_defaults

set_thread_defaults()  # first: before anything imports torch
keep_freed_memory()  # at import, so every entry point and test gets it before big tensors exist
quiet_dependencies()
