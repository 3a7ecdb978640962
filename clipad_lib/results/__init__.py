"""What we measured: run records, resume by content hash, tables."""
from .records import (
    RunOutcome,
    RunRecord,
    code_fingerprint,
    dataset_fingerprint,
    load_records,
    read_record,
    record_path,
    reusable_record,
    run_input_hash,
    run_recorded,
    stable_hash,
    write_json_atomic,
    write_record,
)
from .tables import (few_shot_frame, format_mean_std, load_reported, paper_vs_ours, records_frame, summary_table,
                     wide_table, with_category_mean, write_table)

__all__ = ["few_shot_frame", "wide_table", "RunOutcome", "RunRecord", "code_fingerprint", "dataset_fingerprint", "format_mean_std",
           "load_records", "load_reported", "paper_vs_ours", "read_record", "record_path", "records_frame", "reusable_record", "run_input_hash",
           "run_recorded", "stable_hash", "summary_table", "with_category_mean", "write_json_atomic", "write_record", "write_table"]
