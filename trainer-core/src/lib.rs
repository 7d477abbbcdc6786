//! The shared libtorch trainer (its own issue). Empty in this stage.
