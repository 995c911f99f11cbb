"""The archive index: an index directory, from its build to its queries.

The directory itself:
    layout.py         the names of its files (a public contract) and the usual fix
    manifest.py       manifest.json: parsed, checked, written; the listed files read checked
    locks.py          .build.lock (one build at a time) and .swap.lock (no reader sees a swap)
    slice_table.py    slices.parquet and the checked `SliceTable`
    slice_arrays.py   slice_arrays.npz: the slice table as a query reads it, without pyarrow

Building it:
    build.py          archive -> index: the plan, `BuildOptions`, which cases to encode
    encode.py         slices -> code grids with the model
    distributed.py    one encoding task per case on a Dask cluster
    journal.py        encoded/<case>.npz, the build journal's entries
    assemble.py       journal entries -> the files of an index, swapped in

Querying it:
    searchable.py     `SearchableIndex`, the protocol a query runs on, and its `Hit`
    retrieval.py      open_index -> `ArchiveIndex` (one directory)
    shards.py         an index split in shards, searched together (`ShardedIndex`)
    query_options.py  `QueryOptions`: the options of a query, checked once
    queries.py        run_slice_query / run_external_query, and the JSON schema of a result
    external_case.py  one slice of an external case, read and preprocessed
    catalog.py        the cases of an index as the service lists them
    montage.py        a picture of a query's hits

Nothing is imported here: a query imports only the modules it needs (no torch, no zarr).
"""
