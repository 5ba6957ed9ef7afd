"""The data pipeline that feeds BLAT training: step 1 builds a corpus of real sound-event recordings
(`python -m blat.pipeline.corpus`), with AudioSet tags from a curated table and a JSON Lines manifest."""
