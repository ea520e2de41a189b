"""Training, fine-tuning and evaluation of a VMP layer + backbone."""
