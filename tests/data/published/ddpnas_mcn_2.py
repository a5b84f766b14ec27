# The DCP-NAS authors' format: pairs nested per node, range concat
DDPNAS_MCN_2 = Genotype(
    normal=[
        [('sep_conv_5x5', 1), ('max_pool_3x3', 0)],
        [('dil_conv_3x3', 2), ('skip_connect', 0)],
        [('sep_conv_3x3', 3), ('avg_pool_3x3', 1)],
        [('dil_conv_3x3', 4), ('avg_pool_3x3', 3)]
    ],
    normal_concat=range(2, 6),
    reduce=[
        [('max_pool_3x3', 0), ('sep_conv_3x3', 1)],
        [('dil_conv_3x3', 1), ('sep_conv_3x3', 0)],
        [('max_pool_3x3', 1), ('dil_conv_5x5', 2)],
        [('dil_conv_5x5', 2), ('sep_conv_5x5', 1)]],
    reduce_concat=range(2, 6))
