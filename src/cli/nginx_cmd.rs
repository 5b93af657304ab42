//! `lazyimg nginx-config`: a blob-range cache in front of the site proxy, for
//! many nodes starting one image at once, built on nginx's slice module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub(super) struct NginxConfigArgs {
    /// The registry to cache, e.g. http://tre-ghcr-proxy.nsh.loc:5000.
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// Where nginx listens for lazyimg nodes (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Directory for nginx's cache, logs and pid file.
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Largest size the cache may grow to (nginx size syntax, e.g. 200g).
    #[arg(long, default_value = "100g")]
    max_size: String,
}

pub(super) fn nginx_config(args: NginxConfigArgs) -> anyhow::Result<ExitCode> {
    if !(args.upstream.starts_with("http://") || args.upstream.starts_with("https://")) {
        anyhow::bail!(
            "--upstream must be an http:// or https:// URL, not {:?}",
            args.upstream
        );
    }
    print!(
        "{}",
        render(
            &args.upstream,
            &args.listen,
            &args.cache_dir,
            &args.max_size
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// The nginx.conf for a blob-range cache of `upstream` (see README "Many
/// nodes"). Only `GET /v2/<name>/blobs/sha256:<hex>` is cached, in 1 MiB
/// slices keyed on the digest and the slice (not the repository: a blob
/// shared across repositories is cached once); concurrent misses of one slice
/// go upstream once (`proxy_cache_lock`); manifests, tags and auth challenges
/// pass through uncached. Source of the slice mechanics: nginx's
/// ngx_http_slice_module documentation.
fn render(upstream: &str, listen: &str, dir: &std::path::Path, max_size: &str) -> String {
    let dir = dir.display();
    let upstream = upstream.trim_end_matches('/');
    format!(
        r#"# Written by `lazyimg nginx-config`: a blob-range cache in front of {upstream}.
# Run: nginx -c THIS_FILE (as a user who can write {dir}).
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon on;

events {{
    worker_connections 4096;
}}

http {{
    # $upstream_cache_status: HIT, MISS, EXPIRED... per request, for sizing and checks.
    log_format lazyimg '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                       'range="$http_range" slice="$slice_range" cache=$upstream_cache_status';
    access_log {dir}/access.log lazyimg;
    client_body_temp_path {dir}/client-body;
    proxy_temp_path {dir}/proxy-temp;
    fastcgi_temp_path {dir}/fastcgi-temp;
    uwsgi_temp_path {dir}/uwsgi-temp;
    scgi_temp_path {dir}/scgi-temp;

    # Blob content never changes (it is named by its digest): keep slices long.
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=lazyimg_blobs:64m
                     max_size={max_size} inactive=30d use_temp_path=off;

    server {{
        listen {listen};
        # Pushes pass through unbuffered and unlimited.
        client_max_body_size 0;

        # Blob reads: cached per 1 MiB slice. A client's Range request is served
        # from the slices it touches; nginx asks upstream for whole slices only.
        location ~ "^/v2/(?<repository>.+)/blobs/(?<blob_digest>sha256:[0-9a-f]{{64}})$" {{
            if ($request_method !~ ^(GET|HEAD)$) {{
                return 405;
            }}
            slice 1m;
            proxy_cache lazyimg_blobs;
            proxy_cache_key "$blob_digest $slice_range";
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 30d;
            # Concurrent misses of one slice: one upstream request, the rest wait.
            proxy_cache_lock on;
            proxy_cache_lock_age 60s;
            proxy_cache_lock_timeout 60s;
            # Registries redirect some blob reads (signed CDN URLs): pass those
            # through uncached, the client follows them.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {upstream};
        }}

        # Everything else (manifests, tags, token challenges, uploads): untouched.
        location / {{
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {upstream};
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_caches_blob_slices_by_digest_only() {
        let text = render(
            "http://proxy:5000/",
            "0.0.0.0:8080",
            std::path::Path::new("/c"),
            "10g",
        );
        assert!(text.contains("proxy_cache_key \"$blob_digest $slice_range\";"));
        assert!(text.contains("proxy_pass http://proxy:5000;"));
        assert!(text.contains("listen 0.0.0.0:8080;"));
        assert!(text.contains("max_size=10g"));
        assert!(text.contains("slice 1m;"));
    }
}
