"""Sharded, resumable batch jobs whose workers coordinate through files in a shared job folder only.

`jobs.shards` is the generic runner (stdlib only); `jobs.embed` embeds a manifest of audio with the serving model.
Pipeline stage 2 (`blat.pipeline.caption`) runs on the same runner.
"""
