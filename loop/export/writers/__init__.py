"""One writer per export format, behind `base.DatasetWriter`: rows in, files in a folder out."""
