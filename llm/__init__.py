"""Teams of language models trained with the shared trust-region core."""
