"""Sharded, resumable batch jobs whose workers coordinate through files in a shared job folder only.

`blat_jobs.shards` is the generic runner (stdlib only); `blat_jobs.embed` embeds a manifest of audio with the serving
model.
Pipeline stage 2 (`blat.pipeline.caption`) runs on the same runner.
"""
