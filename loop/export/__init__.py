"""Dataset export (`editloop export`): what the loop produced, curated into datasets to train on.

`selection` reads the rows (edit triples or reflection records) in pages through the pool's filter,
`splits` assigns train/validation by task, `columns` names the columns, `writers/` writes one
format each (Hugging Face Parquet, WebDataset, JSONL), `card` writes the dataset card, `publish`
stages, verifies and publishes with a manifest written last, and `pipeline` runs it all.
"""
