include!("build_link.rs");

fn main() {
    link_libtorch();
}
