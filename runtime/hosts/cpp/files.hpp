// Errors and files for the host: a Failure is one `error: ...` line and exit 2; outputs are written to a
// temporary beside the target and renamed onto it only when complete (as runtime/files.py does).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace ddpm {

// A problem with the user's input or environment, told in one line.
struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline std::string reason() { return std::strerror(errno); }

inline std::vector<unsigned char> read_bytes(const std::string& path, const std::string& what) {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (!file) throw Failure(what + " not found or unreadable: " + path + " (" + reason() + ")");
    std::vector<unsigned char> data;
    unsigned char chunk[1 << 16];
    size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, file)) > 0) data.insert(data.end(), chunk, chunk + got);
    const bool failed = std::ferror(file);
    std::fclose(file);
    if (failed) throw Failure("cannot read " + what + " " + path);
    return data;
}

inline std::string parent_dir(const std::string& path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

inline std::string base_name(const std::string& path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A file written under `.<name>.<pid>.XXXXXX.tmp` beside `path`: commit() renames it onto `path`;
// destroyed uncommitted, it leaves nothing behind.
class AtomicFile {
public:
    explicit AtomicFile(const std::string& path) : path_(path) {
        struct stat info;
        if (stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) throw Failure("output path is a directory: " + path);
        const std::string dir = parent_dir(path);
        if (stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode))
            throw Failure("output directory does not exist: " + dir);
        const std::string pattern = dir + "/." + base_name(path) + "." + std::to_string(getpid()) + ".XXXXXX.tmp";
        std::vector<char> name(pattern.c_str(), pattern.c_str() + pattern.size() + 1);
        const int fd = mkstemps(name.data(), 4);
        if (fd < 0) throw Failure("output directory is not writable: " + dir + " (" + reason() + ")");
        tmp_ = name.data();
        file_ = fdopen(fd, "wb");
        if (!file_) {
            close(fd);
            unlink(tmp_.c_str());
            throw Failure("cannot write " + path);
        }
    }
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
    ~AtomicFile() {
        if (file_) std::fclose(file_);
        if (!committed_) unlink(tmp_.c_str());
    }

    std::FILE* get() const { return file_; }

    void write(const void* data, size_t bytes) {
        if (std::fwrite(data, 1, bytes, file_) != bytes) throw Failure("cannot write " + path_ + " (" + reason() + ")");
    }

    // Flush, fsync, give the usual permissions (mkstemp makes 0600), rename onto the target.
    void commit() {
        const mode_t mask = umask(0);
        umask(mask);
        const bool ok = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0 && fchmod(fileno(file_), 0666 & ~mask) == 0;
        const bool closed = std::fclose(file_) == 0;
        file_ = nullptr;
        if (!ok || !closed || std::rename(tmp_.c_str(), path_.c_str()) != 0)
            throw Failure("cannot write " + path_ + " (" + reason() + ")");
        committed_ = true;
    }

private:
    std::string path_, tmp_;
    std::FILE* file_ = nullptr;
    bool committed_ = false;
};

// Fail before any slow work when `path` cannot be written: its directory is tried for real.
inline void check_writable(const std::string& path) { AtomicFile probe(path); }

}  // namespace ddpm
