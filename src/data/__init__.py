"""Data: BEIR and MS MARCO readers, negative mining, the prepared-set format and its builder, the DataModule."""
