"""Proofs that justify each rule of specs/ops.toml (sympy, on the engine's own index maps).

The names below are reserved by the table: every entry names one, and tests check that no entry
names a proof missing here and no name here is unused. The proofs themselves are built in the
verification-framework issue; until then this module only fixes the names and what each covers.
"""

RESERVED: dict[str, str] = {
    "dense_matrix": "Linear / matmul: rows copied through g, columns divided by replica counts",
    "conv_matrix": "ConvNd as a matrix over channels; depthwise (pass-through) and grouped (per group)",
    "batch_norm": "BatchNorm train and eval: replicated channels keep their statistics",
    "channelwise": "pooling and other per-channel ops commute with replication",
    "elementwise_unary": "any elementwise function commutes with replication",
    "elementwise_binary": "broadcast binary ops: one g on every aligned operand (residual add)",
    "concat_offsets": "concat: a composite map of the inputs' maps at their offsets",
    "split_pieces": "split/chunk/getitem: a space cut into independently widened pieces",
    "flatten_stride": "flatten (C, H, W) -> C*H*W: unit c spans an H*W block (the stride map)",
    "permute_axes": "permute/transpose move layouts with their axes",
    "stop": "no identity: stop entries freeze what they touch",
}
