"""LD4MRec (light diffusion for multimedia recommendation, WWW'24) trained with Ray Train.

How the paper is read, the protocol, the data path, the synchronisation between ranks and
the checkpoint format are in docs/design.md; code comments cite the paper's equation
numbers and that document's sections.

Shape legend (one for the whole package and data_pipeline/). A tensor or array name ends
with its dimensions, e.g. `x_BI` is [B, I], `t_B` is [B]:

    U    users of the dataset               I    items
    B    users in a minibatch (per rank)    W    ranks (world size)
    D    C-Net hidden width d               D_m  width of modality m's raw item features (Dm)
    K    SVD rank d_svd (collaborative signal c_u = r_u V_K, `item_factors_IK`)
    T    diffusion steps (a step t is in 1..T and indexes row t − 1)
    H    losses kept per step by the importance sampler
    N    (t, L_rec) pairs or (user, row) pairs gathered from every rank in one step
    Z    non-zeros of a sparse batch (CSR entries)
    R    rows of a row store (the users a rank holds)
    C    ranking cut-off positions: the largest top-k of `eval.ks`, as in `hits_BC`

K is the SVD rank everywhere; a top-k cut-off is written k in prose (Recall@k, NDCG@k)
and C as a dimension, so the two never share a letter.

From Python (a notebook): `ld4mrec_dist.api.train_run(overrides=[...])` trains what
`jobs/train.py` trains and returns a `RunResult` (run directory, final metrics).
"""
