"""The BLAT pipeline: corpus of real recordings -> simulated scenes -> tag-guided captioner -> synthetic captions
-> contrastive pre-training -> evaluation (`python -m blat.pipeline.run`; each stage also has its own command)."""

from threadpoolctl import threadpool_limits

# scipy's resampling wakes OpenBLAS worker threads that then spin beside torch's own pool; on a 2-core machine
# that made training steps 10x slower. The pipeline's BLAS work is small, so one BLAS thread loses nothing.
threadpool_limits(1, user_api="blas")
