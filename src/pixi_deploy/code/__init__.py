"""The project's code on the cluster: which files, named by content, stored once, copied per job."""
