/// The platform's version, printed by `--version` of `cdp` and of every service executable.
///
/// One number for the whole repository: the five services and the client are released together, and
/// their RPC APIs and stores are migrated together.
public enum PlatformVersion {
    /// The version, `MAJOR.MINOR.PATCH` (semantic versioning; `-dev` between releases).
    public static let current = "0.1.0-dev"
}
