module.exports = {
  apps: [{ name: 'fmt', script: 'app.js', log_type: 'format', log_date_format: 'YYYY-MM-DD HH:mm Z' }],
};
