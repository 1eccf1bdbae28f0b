"""Names shared by every layer (the bottom layer, beside `phasegate.errors`; no imports).

Container names and ports live with the container model in `phasegate.policy.containers`.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LAB_DIR", "LAB_DIR_ENV", "VLLM_URLS_ENV"]

# The API's container on Cloud Run reads its vLLM upstreams (comma-separated base URLs) from
# this env var; a transition changes it to route traffic around a container being replaced.
VLLM_URLS_ENV = "VLLM_BASE_URLS"

# Where the embedded lab lives: --dir, else $PHASEGATE_LAB, else .lab (relative to the cwd).
LAB_DIR_ENV = "PHASEGATE_LAB"
DEFAULT_LAB_DIR = ".lab"
