// Command-line flags of the `longctx` subcommands: a table per command with names users know from llama.cpp
// (-m -p -f -n -c -t -ub --temp --top-k --top-p --min-p -s), an environment twin LONGCTX_ARG_<NAME> for every
// long flag, `--help` listing each default, and one-line errors for unknown flags or bad values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"

namespace lc::cli {

struct flag {
    std::string short_name; // "-m" or ""
    std::string long_name;  // "--model"
    std::string value_name; // "PATH"; empty for a switch
    std::string help;
    std::string def; // default shown by --help and used when absent ("" = none)
};

// A byte count with an optional binary suffix (see arg_parser::get_bytes()).
result<size_t> parse_bytes(const std::string & s);

class arg_parser {
  public:
    arg_parser(std::string command, std::string usage) : command_(std::move(command)), usage_(std::move(usage)) {}
    void add(flag f) { flags_.push_back(std::move(f)); }

    // Parses argv; fills values. "--help" sets help_requested(). Errors name the flag and what was expected.
    status parse(const std::vector<std::string> & args);
    bool   help_requested() const { return help_; }
    void   print_help() const;

    bool            has(const std::string & long_name) const; // given on the command line or environment
    std::string     get(const std::string & long_name) const; // value or default
    result<int64_t> get_int(const std::string & long_name, int64_t lo, int64_t hi) const;
    result<double>  get_float(const std::string & long_name, double lo, double hi) const;
    // A byte count: a number with an optional binary suffix K, M, G, T (KiB, MiB, ...) or B: "512M", "2G", "1048576".
    result<size_t> get_bytes(const std::string & long_name) const;
    // Comma-separated list of integers: "512,4096"
    result<std::vector<int64_t>>     get_int_list(const std::string & long_name, int64_t lo, int64_t hi) const;
    const std::vector<std::string> & positional() const { return positional_; }

  private:
    const flag *                                     find(const std::string & name) const;
    std::string                                      command_, usage_;
    std::vector<flag>                                flags_;
    std::vector<std::pair<std::string, std::string>> values_; // long name -> value
    std::vector<std::string>                         positional_;
    bool                                             help_ = false;
};

} // namespace lc::cli
