#!/bin/sh
# Summarises the files in the task's working directory: each file's size in bytes and, for text
# files (by extension), the number of lines and the last line. Writes summary-TASK.txt, which the
# workflow collects as an output. POSIX sh and utilities only.
set -eu

task="${1:-0}"
summary="summary-$task.txt"

{
    echo "task $task"
    for file in *; do
        [ -f "$file" ] || continue
        case "$file" in summary-*.txt) continue ;; esac
        bytes=$(wc -c < "$file" | tr -d ' ')
        case "$file" in
            *.txt | *.csv | *.log | *.thermo | *.toml | *.sh)
                lines=$(wc -l < "$file" | tr -d ' ')
                last=$(tail -n 1 "$file")
                echo "$file: $bytes bytes, $lines lines, last: $last"
                ;;
            *)
                echo "$file: $bytes bytes"
                ;;
        esac
    done
} > "$summary"
echo "wrote $summary"
