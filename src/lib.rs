pub use bamba_model as model;
