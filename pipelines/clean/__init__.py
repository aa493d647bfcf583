"""The clean/dedup job: its config (`job`) and its run (`runner`): plan, documents, dedup, write."""
