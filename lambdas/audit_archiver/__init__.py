"""The audit archiver Lambda: copies the events table's stream into the Object Lock bucket."""
