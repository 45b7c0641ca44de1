"""Hyperparameter sweeps on Ray Tune: each trial is a full Ray Train run of LD4MRec.

`search_space` reads a sweep file (jobs/configs/sweeps/*.yaml) into a `SweepSpec` and a
Tune param space; `sweep` runs, resumes and summarises a sweep; `heatmap` draws a 2-D
grid like the paper's sensitivity figures (§4.4, Figs. 4-5).
"""
