"""What we measured: run records, resume by content hash, tables."""
from .records import (
    ZERO_SHOT,
    RunOutcome,
    RunRecord,
    RunSpec,
    code_fingerprint,
    dataset_fingerprint,
    few_shot_setting,
    load_records,
    read_record,
    record_path,
    run_recorded,
    run_tag,
    sample_columns,
    stable_hash,
    write_json_atomic,
    write_record,
)
from .tables import (dataset_means, domain_rank, domain_rows, format_mean_std, load_reported, name_variants,
                     paper_vs_ours, records_frame, summary_table, wide_table, with_category_mean, write_table)

__all__ = ["ZERO_SHOT", "RunOutcome", "RunRecord", "RunSpec", "code_fingerprint", "dataset_fingerprint", "dataset_means", "domain_rank", "domain_rows",
           "few_shot_setting", "format_mean_std", "load_records", "load_reported", "name_variants", "paper_vs_ours",
           "read_record", "record_path", "records_frame", "run_recorded", "run_tag", "sample_columns", "stable_hash", "summary_table",
           "wide_table", "with_category_mean", "write_json_atomic", "write_record", "write_table"]
