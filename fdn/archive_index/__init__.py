"""The archive index: an index directory, from its build to its queries.

    build.py, encode.py, distributed.py   archive -> encoded cases (the build journal)
    journal.py, assemble.py               journal entries -> the files of an index, swapped in
    indexdir.py                           the directory's names, manifest, locks, slice table
    retrieval.py                          open_index -> ArchiveIndex (search one index)
    shards.py                             an index split in shards, searched together
    queries.py                            the one code path of a query, and its JSON schema
    montage.py                            a picture of a query's hits

Nothing is imported here: a query imports only the modules it needs (no torch, no zarr).
"""
