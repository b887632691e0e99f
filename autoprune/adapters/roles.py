"""Which role a linear plays in a decoder block, read from its dotted name inside the block.

The part of the block a linear sits in (attention or MLP) comes from its parent modules'
names; its role from its own name. The tables are allow-lists of the names transformers'
decoder-only families use (Llama, OPT, GPT-2, GPT-NeoX, Falcon, Bloom, Phi, GPT-J, ...);
a name outside them is not guessed at.
"""

from __future__ import annotations

from typing import Optional

ATTENTION_PARTS = ("self_attn", "self_attention", "attn", "attention")
MLP_PARTS = ("mlp", "feed_forward", "ffn")

ATTENTION_NAMES = {
    "q_proj": "q", "query": "q", "k_proj": "k", "key": "k", "v_proj": "v", "value": "v",
    "qkv_proj": "qkv", "query_key_value": "qkv", "c_attn": "qkv", "Wqkv": "qkv", "W_pack": "qkv",
    "o_proj": "o", "out_proj": "o", "dense": "o", "c_proj": "o",
}
MLP_NAMES = {
    "gate_proj": "gate", "up_proj": "up", "gate_up_proj": "gate_up", "down_proj": "down",
    "fc1": "up", "fc_in": "up", "c_fc": "up", "dense_h_to_4h": "up",
    "fc2": "down", "fc_out": "down", "c_proj": "down", "dense_4h_to_h": "down",
}
# Linears sitting directly in the block (OPT's fc1 / fc2) are MLP linears.
BLOCK_NAMES = {"fc1": "up", "fc2": "down"}


def part_of(dotted: str) -> Optional[str]:
    """'attention', 'mlp' or 'block' (directly in the block) for a dotted name, None if unknown."""
    parents = dotted.split(".")[:-1]
    if not parents:
        return "block"
    if any(p in ATTENTION_PARTS for p in parents):
        return "attention"
    if any(p in MLP_PARTS for p in parents):
        return "mlp"
    return None


def role_of(dotted: str) -> Optional[str]:
    """The role of the linear at `dotted` inside a block, or None when its name says nothing known."""
    table = {"attention": ATTENTION_NAMES, "mlp": MLP_NAMES, "block": BLOCK_NAMES}.get(part_of(dotted), {})
    return table.get(dotted.rsplit(".", 1)[-1])
