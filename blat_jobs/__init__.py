"""Batch jobs at corpus scale on Ray Data: embedding a manifest of audio (`blat_jobs.embed`) and, through the same
engine, the pipeline's stage 2 captioning (`blat.pipeline.caption`).

`blat_jobs.shards` keeps what a job leaves on disk (stdlib only: the plan, atomic shards, job.json's spec, the merge
check); `blat_jobs.ray_run` runs a job's unfinished shards on a local Ray or a cluster.
"""
