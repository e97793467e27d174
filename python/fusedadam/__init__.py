"""fusedadam: fused multi-tensor Adam/AdamW.

The PyTorch optimizer lives in fusedadam.torch (it imports torch; this module does not):

    from fusedadam.torch import FusedAdamW
    opt = FusedAdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
"""
