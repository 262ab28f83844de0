"""Settings shared by the server extension and the magics: one traitlets class, `HiveMind`.

`c.HiveMind.pool_address = ...` works in `jupyter_server_config.py` (the extension) and in
`ipython_config.py` (the magics), and `%config HiveMind.interrupt_action = 'detach'` in a kernel.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Enum, Float, Int, List, Unicode, default, validate
from traitlets.config import Configurable

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import parse_size
from hivemind_nodepool.protocol.wire import join_address, split_address


class HiveMind(Configurable):
    """HiveMind for Jupyter: where the pool is and what a task asks for by default."""

    pool_address = Unicode(
        "", config=True, help="The NodePool's HOST:PORT used when signing in without one ($HIVEMIND_POOL)."
    )
    ca_file = Unicode("", config=True, help="A CA certificate (PEM) for TLS to the pool ($HIVEMIND_CA_FILE).")
    insecure = Bool(False, config=True, help="Allow plaintext gRPC to a pool off loopback.")
    results_dir = Unicode(
        "hivemind-results",
        config=True,
        help="Folder for fetched results, relative to the contents root (server) or working dir (kernel).",
    )
    save_results = Bool(
        False,
        config=True,
        help="A %%hivemind cell keeps its whole result (executed notebook and all) in results_dir, as "
        "--save does per cell; otherwise only its output files, and the notebook when it failed.",
    )
    default_cpus = Float(1.0, config=True, help="CPU cores a task asks for when it does not say.")
    default_memory = Unicode("2G", config=True, help="Memory a task asks for when it does not say.")
    default_gpus = Int(0, config=True, help="GPUs a task asks for when it does not say.")
    max_bundle_size = Unicode("1G", config=True, help="The cap on a task's files before compression.")
    trusted_pools = List(
        Unicode(),
        [],
        config=True,
        help=(
            "Pools (HOST:PORT, as you sign in) whose workers you trust with your kernel and browser: "
            "their tasks' --pull variables may come back pickled, and their HTML and JavaScript "
            "outputs are shown as they are. By default neither: a worker may be someone else's machine."
        ),
    )
    wait_for_fit = Bool(
        False,
        config=True,
        help="A %%hivemind cell that no connected worker could ever run keeps waiting (for a larger "
        "worker to join) instead of ending at once with the reason; --wait-for-fit does this per cell.",
    )
    interrupt_action = Enum(
        ["cancel", "detach"],
        "cancel",
        config=True,
        help="Interrupting a waiting %%hivemind cell cancels the remote task, or only detaches from it.",
    )

    @default("pool_address")
    def _pool_address_default(self) -> str:
        return os.environ.get("HIVEMIND_POOL", "")

    @default("ca_file")
    def _ca_file_default(self) -> str:
        return os.environ.get("HIVEMIND_CA_FILE", "")

    @validate("default_memory", "max_bundle_size")
    def _check_size(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        try:
            parse_size(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @validate("default_cpus")
    def _check_positive(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value <= 0:
            raise ValueError(f"{proposal['trait'].name} must be positive, not {value}")
        return value

    @validate("default_gpus")
    def _check_gpus(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise ValueError(f"default_gpus cannot be negative: {value}")
        return value

    @validate("trusted_pools")
    def _check_pools(self, proposal: dict[str, Any]) -> list[str]:
        pools = [str(pool) for pool in proposal["value"]]
        for pool in pools:
            try:
                split_address(pool)
            except InvalidInput as exc:
                raise ValueError(f"trusted_pools: {exc}") from None
        return pools

    def trusts(self, pool: str | None) -> bool:
        """Whether the user trusts this pool's workers (c.HiveMind.trusted_pools)."""
        if not pool:
            return False
        try:
            wanted = join_address(*split_address(pool))
            return any(join_address(*split_address(p)) == wanted for p in self.trusted_pools)
        except InvalidInput:
            return False

    @property
    def default_memory_bytes(self) -> int:
        return parse_size(self.default_memory)

    @property
    def max_bundle_bytes(self) -> int:
        return parse_size(self.max_bundle_size)
